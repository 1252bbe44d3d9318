; torchkeeper-setup.exe: a per-user installer (no admin rights) for the PyInstaller app.
;   makensis -INPUTCHARSET UTF8 -DSRC=<dist\torchkeeper> -DVERSION=0.1.0 -DOUTFILE=<torchkeeper-setup.exe> torchkeeper.nsi
; Installs into %LOCALAPPDATA%\Programs\torchkeeper: a Start-menu shortcut, the toast
; AppUserModelID, an "Apps & features" entry; start at login unless /NoAutostart (the user's
; earlier "off" is kept: --if-not-declined); then starts the agent.
; Silent: /S [/NoAutostart]. The uninstaller: /S [/RemoveCache].
; In English, Traditional and Simplified Chinese and Japanese: NSIS picks the user's Windows
; display language when it has it (else English), and records it as the Apps & features entry's
; "Language" (what torchkeeper's own messages follow is the same system setting).
; This file is UTF-8 (its LangStrings): makensis -INPUTCHARSET UTF8.

; a 64-bit installer for a 64-bit app (and Wine without wine32 runs only these)
Target amd64-unicode
!include MUI2.nsh
!include FileFunc.nsh
!include LogicLib.nsh

!ifndef SRC
  !error "pass -DSRC=<the PyInstaller dist\torchkeeper folder>"
!endif
!ifndef VERSION
  !define VERSION 0.0.0
!endif
!ifndef OUTFILE
  !define OUTFILE torchkeeper-setup.exe
!endif

!define APP torchkeeper
; desktop-notifier's WinRT toasts use the app name as AppUserModelID (an unpackaged app)
!define AUMID torchkeeper
!define UNINST_KEY "Software\Microsoft\Windows\CurrentVersion\Uninstall\${APP}"
!define AUMID_KEY "Software\Classes\AppUserModelId\${AUMID}"
!define ICON "$INSTDIR\_internal\torchkeeper\_data\icons\torchkeeper.ico"

Name "${APP}"
OutFile "${OUTFILE}"
InstallDir "$LOCALAPPDATA\Programs\${APP}"
RequestExecutionLevel user
SetCompressor /SOLID lzma
Icon "${SRC}\_internal\torchkeeper\_data\icons\torchkeeper.ico"
UninstallIcon "${SRC}\_internal\torchkeeper\_data\icons\torchkeeper.ico"
BrandingText "${APP} ${VERSION}"

!define MUI_ICON "${SRC}\_internal\torchkeeper\_data\icons\torchkeeper.ico"
!define MUI_UNICON "${SRC}\_internal\torchkeeper\_data\icons\torchkeeper.ico"
!define MUI_COMPONENTSPAGE_NODESC
!define MUI_FINISHPAGE_RUN "$INSTDIR\torchkeeper.exe"
!define MUI_FINISHPAGE_RUN_PARAMETERS "run"
!define MUI_FINISHPAGE_RUN_TEXT "$(StartNow)"
!insertmacro MUI_PAGE_COMPONENTS
!insertmacro MUI_PAGE_DIRECTORY
!insertmacro MUI_PAGE_INSTFILES
!insertmacro MUI_PAGE_FINISH
!insertmacro MUI_UNPAGE_COMPONENTS
!insertmacro MUI_UNPAGE_INSTFILES
; the first is the default for a system language that is not here
!insertmacro MUI_LANGUAGE "English"
!insertmacro MUI_LANGUAGE "TradChinese"
!insertmacro MUI_LANGUAGE "SimpChinese"
!insertmacro MUI_LANGUAGE "Japanese"

LangString StartNow ${LANG_ENGLISH} "Start torchkeeper now"
LangString StartNow ${LANG_TRADCHINESE} "立即啟動 torchkeeper"
LangString StartNow ${LANG_SIMPCHINESE} "立即启动 torchkeeper"
LangString StartNow ${LANG_JAPANESE} "今すぐ torchkeeper を起動"
LangString SecAppName ${LANG_ENGLISH} "torchkeeper (required)"
LangString SecAppName ${LANG_TRADCHINESE} "torchkeeper（必要）"
LangString SecAppName ${LANG_SIMPCHINESE} "torchkeeper（必需）"
LangString SecAppName ${LANG_JAPANESE} "torchkeeper（必須）"
LangString SecAutostartName ${LANG_ENGLISH} "Start torchkeeper when I log in"
LangString SecAutostartName ${LANG_TRADCHINESE} "登入時啟動 torchkeeper"
LangString SecAutostartName ${LANG_SIMPCHINESE} "登录时启动 torchkeeper"
LangString SecAutostartName ${LANG_JAPANESE} "ログイン時に torchkeeper を起動"
LangString SecUnCacheName ${LANG_ENGLISH} "Remove the bundle cache (downloaded CUDA / cuDNN libraries)"
LangString SecUnCacheName ${LANG_TRADCHINESE} "移除組合包快取（已下載的 CUDA / cuDNN 程式庫）"
LangString SecUnCacheName ${LANG_SIMPCHINESE} "移除组合包缓存（已下载的 CUDA / cuDNN 库）"
LangString SecUnCacheName ${LANG_JAPANESE} "バンドルのキャッシュを削除（ダウンロードした CUDA / cuDNN ライブラリ）"

; the running agent holds its exe: stop it (after the change it is writing) before files change
!macro StopAgent
  ${If} ${FileExists} "$INSTDIR\torchkeeper-cli.exe"
    nsExec::ExecToLog '"$INSTDIR\torchkeeper-cli.exe" stop --timeout 60'
    Pop $0
  ${EndIf}
!macroend

Section "$(SecAppName)" SecApp
  SectionIn RO
  SetShellVarContext current
  !insertmacro StopAgent
  SetOutPath "$INSTDIR"
  File /r "${SRC}\*"
  WriteUninstaller "$INSTDIR\uninstall.exe"

  CreateShortCut "$SMPROGRAMS\${APP}.lnk" "$INSTDIR\torchkeeper.exe" "run" "${ICON}" 0

  WriteRegStr HKCU "${AUMID_KEY}" "DisplayName" "${APP}"
  WriteRegStr HKCU "${AUMID_KEY}" "IconUri" "${ICON}"

  WriteRegStr HKCU "${UNINST_KEY}" "DisplayName" "${APP}"
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayVersion" "${VERSION}"
  WriteRegStr HKCU "${UNINST_KEY}" "Publisher" "torchkeeper"
  WriteRegStr HKCU "${UNINST_KEY}" "InstallLocation" "$INSTDIR"
  WriteRegStr HKCU "${UNINST_KEY}" "DisplayIcon" "${ICON}"
  WriteRegStr HKCU "${UNINST_KEY}" "UninstallString" '"$INSTDIR\uninstall.exe"'
  WriteRegStr HKCU "${UNINST_KEY}" "QuietUninstallString" '"$INSTDIR\uninstall.exe" /S'
  WriteRegDWORD HKCU "${UNINST_KEY}" "NoModify" 1
  WriteRegDWORD HKCU "${UNINST_KEY}" "NoRepair" 1
  WriteRegDWORD HKCU "${UNINST_KEY}" "Language" $LANGUAGE
  ${GetSize} "$INSTDIR" "/S=0K" $0 $1 $2
  IntFmt $0 "0x%08X" $0
  WriteRegDWORD HKCU "${UNINST_KEY}" "EstimatedSize" "$0"
SectionEnd

Section "$(SecAutostartName)" SecAutostart
  ; the user left this ticked; an earlier "off" of theirs stays off (--if-not-declined)
  nsExec::ExecToLog '"$INSTDIR\torchkeeper-cli.exe" autostart enable --if-not-declined --by installer'
  Pop $0
SectionEnd

Function .onInit
  ${GetParameters} $R0
  ClearErrors
  ${GetOptions} $R0 "/NoAutostart" $R1
  ${IfNot} ${Errors}
    !insertmacro UnselectSection ${SecAutostart}
  ${EndIf}
FunctionEnd

; a silent install has no finish page: start the agent here
Function .onInstSuccess
  ${If} ${Silent}
    Exec '"$INSTDIR\torchkeeper.exe" run'
  ${EndIf}
FunctionEnd

Section /o "un.$(SecUnCacheName)" SecUnCache
SectionEnd

Section "un.$(SecAppName)" SecUnApp
  SectionIn RO
  SetShellVarContext current
  ; stop the agent, remove the start-at-login entry (the user's choice is kept for a
  ; reinstall) and the logs; settings, targets and the backups revert needs are kept, and a
  ; target's files are never touched
  ${If} ${SectionIsSelected} ${SecUnCache}
    nsExec::ExecToLog '"$INSTDIR\torchkeeper-cli.exe" uninstall --timeout 60 --remove-cache'
  ${Else}
    nsExec::ExecToLog '"$INSTDIR\torchkeeper-cli.exe" uninstall --timeout 60'
  ${EndIf}
  Pop $0
  Delete "$SMPROGRAMS\${APP}.lnk"
  DeleteRegKey HKCU "${AUMID_KEY}"
  DeleteRegKey HKCU "${UNINST_KEY}"
  RMDir /r "$INSTDIR\_internal"
  Delete "$INSTDIR\torchkeeper.exe"
  Delete "$INSTDIR\torchkeeper-cli.exe"
  Delete "$INSTDIR\uninstall.exe"
  RMDir "$INSTDIR"
SectionEnd

Function un.onInit
  ${un.GetParameters} $R0
  ClearErrors
  ${un.GetOptions} $R0 "/RemoveCache" $R1
  ${IfNot} ${Errors}
    !insertmacro SelectSection ${SecUnCache}
  ${EndIf}
FunctionEnd
