import { test } from 'node:test';
import assert from 'node:assert/strict';
import { utf8AddrDecode, utf8AddrEncode, xtextDecode, xtextEncode } from './xtext.ts';

test('xtextDecode: xchars pass, +HH decodes, anything else is malformed', () => {
  assert.equal(xtextDecode('bob@example.test'), 'bob@example.test');
  assert.equal(xtextDecode('a+2Bb+3Dc'), 'a+b=c');
  assert.equal(xtextDecode('a+2bb'), 'a+b', 'lower-case hex is taken (liberal)');
  assert.equal(xtextDecode(''), '');
  for (const bad of ['a+', 'a+2', 'a+G0', 'a=b', 'a b', 'caf\u00e9', 'a\x7f', 'a\tb']) assert.equal(xtextDecode(bad), undefined, JSON.stringify(bad));
});

test('xtextEncode: round trip, and "+", "=", space, controls and UTF-8 octets as +HH', () => {
  assert.equal(xtextEncode('a+b=c d'), 'a+2Bb+3Dc+20d');
  assert.equal(xtextEncode('caf\u00e9'), 'caf+C3+A9');
  for (const s of ['plain@example.test', 'x+y=z', ' !~', 'a\r\nb']) assert.equal(xtextDecode(xtextEncode(s)), s);
  assert.match(xtextEncode('any\u00fc+=\x00'), /^[\x21-\x7e]+$/);
});

test('utf8AddrDecode: QCHARs, \\x{HEX} escapes, raw UTF-8 only as unitext', () => {
  assert.equal(utf8AddrDecode('b\\x{FC}cher@example.test', false), 'b\u00fccher@example.test');
  assert.equal(utf8AddrDecode('b\u00fccher@example.test', true), 'b\u00fccher@example.test');
  assert.equal(utf8AddrDecode('b\u00fccher@example.test', false), undefined, 'raw UTF-8 needs unitext');
  assert.equal(utf8AddrDecode('\\x{1F600}@x', false), '\u{1F600}@x');
  for (const bad of ['a+b', 'a=b', 'a\\b', 'a\\x{}', 'a\\x{D800}', 'a\\x{110000}', 'a b', 'a\\x{FC']) assert.equal(utf8AddrDecode(bad, true), undefined, JSON.stringify(bad));
  assert.equal(utf8AddrDecode('a\ufffdb', true), undefined, 'a replacement character is never an address');
});

test('utf8AddrEncode: 7-bit form round-trips; unitext keeps UTF-8 raw', () => {
  const addr = 'j\u00fcrgen+tag=1@b\u00fccher.example';
  const seven = utf8AddrEncode(addr, false);
  assert.equal(seven, 'j\\x{FC}rgen\\x{2B}tag\\x{3D}1@b\\x{FC}cher.example');
  assert.match(seven, /^[\x21-\x7e]+$/);
  assert.equal(utf8AddrDecode(seven, false), addr);
  assert.equal(utf8AddrEncode(addr, true), 'j\u00fcrgen\\x{2B}tag\\x{3D}1@b\u00fccher.example');
  assert.equal(utf8AddrDecode(utf8AddrEncode(addr, true), true), addr);
});
